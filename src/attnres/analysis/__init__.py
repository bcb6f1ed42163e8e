"""Looking at models: parameters, FLOPs, timing, attention statistics, explanations."""
