"""The stream processor: the Faust app's wiring (``app``), the input processor it drives
(``processor``, Faust-free), the deadline index and the input-hole check (``gaps``)."""
