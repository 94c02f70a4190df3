"""AiiDA CalcJobs: the Pacemaker fit, ASE labelling and extrapolation-grade selection."""
