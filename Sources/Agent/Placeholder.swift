// placeholder while the package first builds
