"""Running a node: doctor, budget history, readiness, health port, metrics, roles."""
