"""Bundle import: the data contract's CSV files into a new data version."""
