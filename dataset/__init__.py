"""Data: reading and validating rows, the prompt template, tokenization, masks and collators."""
