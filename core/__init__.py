"""Shared bottom layer: the error root and helpers every package may import (nothing here imports a
Ragyard package)."""
