"""Performance accounting: analytic FLOPs, device peaks and memory, compiled-program statistics."""
