"""Layer 4, analysis of runs and TSUs: the guide's checks, the pooled TSU χ², detection power, audits."""
