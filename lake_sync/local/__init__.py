"""Local stand-ins for production services, for the demo, the tests and the benchmarks."""
