"""The neural-network parts: layers, the models built from them (the MLP and the conv4 net),
losses, optimizers, parameter trees and the algorithms' building blocks (SNAIL's blocks, Meta
Networks' parts).  Nothing here imports an algorithm module."""
