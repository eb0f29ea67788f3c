"""Malformed: builds a config from scratch and forgets keys of the schema."""

import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.seed = 0
  return c
