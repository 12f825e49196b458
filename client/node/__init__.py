"""The deployed site node: its settings (node.toml), its allow-list of app bundles, and the gated
task runner that answers the SuperNode's ClientApp tasks with the site's installed ClientApp."""
