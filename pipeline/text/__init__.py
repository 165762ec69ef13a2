"""The text stage's rules: inverse text normalization, fillers, the user dictionary."""
