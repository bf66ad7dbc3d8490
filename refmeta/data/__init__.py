"""Where episodes come from: sinusoid tasks, the Omniglot zips, Lake's 20 one-shot runs."""
