"""Reading and writing fields: opening and normalising ERA5 sources, the variable catalogue and
units, writing decoded fields, and ERA5-like sample data."""
