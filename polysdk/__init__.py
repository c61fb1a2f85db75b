"""polysdk."""
