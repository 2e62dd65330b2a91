"""Infrastructure of the distributed counter: data template, deploy tooling, local runtime."""
