"""Where episodes come from: sinusoid tasks, the Omniglot zips (and ``fetch``, which downloads
and checks them), Lake's 20 one-shot runs."""
