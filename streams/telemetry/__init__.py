"""What every process reports about itself: Prometheus metrics, health of background parts,
log formatting (logfmt or JSON). Imported by the edges and the worker alike; imports none of them."""
