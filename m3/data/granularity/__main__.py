from .splits import main

main()
