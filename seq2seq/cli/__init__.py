"""The console commands: one thin module each that parses arguments, calls the library and reports
errors. Run any of them as `python -m seq2seq.cli.<name>`. Nothing outside this folder imports it.
"""
