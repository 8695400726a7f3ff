from nst_jax.cli.app import console

console()
