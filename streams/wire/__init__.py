"""The wire format: Avro single-object encoding (``codec``), the domain's values as records (``serde``).

``faust_codecs`` registers the same codecs with Faust; only the worker imports it, so the
sink and the command-line tools never load Faust.
"""
