"""The bridge to nnU-Net: dataset location, a configuration's facts and nnU-Net's preprocessor
(:mod:`.configuration`), model folders (:mod:`.model_folder`), networks as the trainers build them, plans transfer
(nnssl checkpoints' plans included), the ``-pretrained_weights`` hook. The only package that imports nnunetv2 besides
``trainers/`` (which subclass nnU-Net's trainer): import-linter's contract in pyproject.toml checks it."""
