"""Text checks: normalisation against evasion, curated term lists, an offline classifier."""
