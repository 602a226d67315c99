"""The papers' experiments (BioNAS tables, the plasticity paper's Table 2 and figures, the
thesis's chapters 4, 6 and 7) as sequences of runs over seeds, with their tables and figures."""
