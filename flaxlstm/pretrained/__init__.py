"""Pretrained models in Flax: TiRex (`flaxlstm.pretrained.tirex`)."""
