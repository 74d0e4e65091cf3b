"""The bridge to nnU-Net: dataset location, networks as the trainers build them, plans transfer, the
``-pretrained_weights`` hook. Every import of nnunetv2 outside ``trainers/`` and ``cli/`` lives here."""
