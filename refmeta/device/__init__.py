"""Where arrays live: numpy or CuPy (``backend``), and the strict stand-in array (``strict``)."""
