"""The node database: tables, engines and schema migrations."""
