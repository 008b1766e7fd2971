"""The Click modular router as vnet's encapsulation engine: configurations
generated from a deployment plan (``config``) and one Click process per
substrate host, changed at run time through its control socket (``process``)."""
