"""Networks: the StyleGAN2 generator, the encoders, the fusion MLP and the ported dlib identity ResNet."""
