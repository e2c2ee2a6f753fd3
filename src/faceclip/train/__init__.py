"""faceclip.train: training the FaceCLIP regressor.

- :mod:`faceclip.train.data`: training data. Photos are preprocessed once into a cache of aligned
  224 crops, 68 landmarks and skin masks (:func:`~faceclip.train.data.preprocess_folder`, read by
  :class:`~faceclip.train.data.FolderFaceDataset`); synthetic faces with ground-truth parameters
  come from :class:`~faceclip.train.data.SyntheticFaceDataset`. Both yield
  :class:`~faceclip.train.data.FaceSample`; :func:`~faceclip.train.data.collate` makes a
  :class:`~faceclip.train.data.FaceBatch`; :class:`~faceclip.train.data.Augment` is the
  augmentation.

Import the submodules directly (``from faceclip.train.data import ...``); this package imports
nothing heavy itself.
"""
