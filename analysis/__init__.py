"""Tables, plots and reports for finished experiments."""
