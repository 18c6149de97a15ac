"""Speed and memory benchmarks behind ``transmed bench``; results go to benchmarks/results/."""
