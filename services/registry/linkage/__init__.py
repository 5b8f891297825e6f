"""Series linkage (issue 10, docs/linkage.md): which media of different origins are linked, which
series their links link, and the clusters those series form."""
