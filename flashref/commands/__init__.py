"""One module per `flashref` subcommand.

Each module exposes `register(subparsers)`, which adds its parser and sets
`func` to the function that runs it. Registration must stay cheap: heavy imports
(torch, triton, the kernels) happen inside the run function, so `flashref --help`
is instant.
"""
