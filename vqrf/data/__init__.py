"""Dataset readers. Every reader returns a :class:`~vqrf.data.scene.Scene`."""
