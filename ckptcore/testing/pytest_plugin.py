"""pytest plugin entry point of the conformance kit: makes its fixtures available."""
