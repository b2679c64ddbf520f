"""Side-by-side comparisons of architectures under one budget (`lmforge bench-arch`)."""
