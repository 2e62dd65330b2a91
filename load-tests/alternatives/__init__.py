"""Alternative counting strategies, implemented only to be measured against ours.

Each module builds a small Chalice app (``create_app(client, table_name)``) with the
routes the k6 scenarios use, served by the same HTTP adapter as the real app and run
against the same embedded backend. None of this is part of the product.
"""
