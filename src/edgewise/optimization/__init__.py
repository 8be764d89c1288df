"""The search: the best model within a budget, the Pareto front, the report."""
