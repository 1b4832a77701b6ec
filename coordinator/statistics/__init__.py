"""From noisy answers to estimates, tests and findings."""
