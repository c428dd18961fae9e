"""The runtime engine a clinician's Slicer ships: volumes, model files and cards, conversion, quality maps, the enhance job. Imports nothing above it."""
