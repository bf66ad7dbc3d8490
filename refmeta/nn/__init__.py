"""The neural-network parts: layers, losses, optimizers, parameter trees and the algorithms'
building blocks (SNAIL's blocks, Meta Networks' parts, the fused MLP).  Nothing here imports
an algorithm module."""
