"""Studies: several config variants, each trained with several seeds, and their joint report."""
