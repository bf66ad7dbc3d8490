"""Where arrays live: numpy or CuPy (``backend``), how autograd differentiates a device array
(``autograd_patches``), and the strict stand-in array (``strict``)."""
