"""The synthetic-data factory: phantoms, real CT slices, the MVCT simulator, augmentation, datasets and the shipped sample. Above engine only."""
