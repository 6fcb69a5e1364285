"""Use a trained backbone or classifier on new scans: embed, predict, select."""
