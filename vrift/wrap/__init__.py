"""`vrift wrap`: the front end that runs a build tool under the preload library.

Kept cheap to import: `fastwrap` reaches the tool's exec without click, yaml or pluggy."""
