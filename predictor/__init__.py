"""Scale predictors that learn the minimal sufficient scale from oracle data (built in a later issue)."""
